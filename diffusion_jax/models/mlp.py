"""A timestep-conditioned MLP denoiser for low-dimensional data (2D toy sets)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import default_init, label_embedding, timestep_embedding


class MLP(nn.Module):
  """A denoiser network for vectors; every hidden layer adds a projection of temb."""

  hidden_dim: int = 128
  num_layers: int = 3
  dropout: float = 0.0
  outputs_per_channel: int = 1  # 2 with a learned variance: the prediction, then the variance
  # Compute dtype of the dense layers, "float32" or "bfloat16"; parameters and the timestep
  # sinusoids stay float32.
  dtype: str = "float32"
  num_classes: int = 0  # > 0: class-conditional, label num_classes the null class (see UNet)

  @nn.compact
  def __call__(
    self, x_BxD: jax.Array, t_B: jax.Array, train: bool = False, y_B: jax.Array | None = None
  ) -> jax.Array:
    """Predicts the noise in x_t (or x0 or v, as trained; see `parametrization`).

    Args:
      x_BxD: [B, D] noisy vectors x_t.
      t_B: [B] timestep indices (int or float).
      train: turns dropout on; then apply needs a 'dropout' rng if dropout > 0.
      y_B: [B] int class labels in 0..num_classes (num_classes: the null class) for a
        conditional network; None: the null class.

    Returns:
      [B, D * outputs_per_channel] float32: the prediction (e.g. eps), then any variance outputs.
    """
    dense = lambda n: nn.Dense(n, kernel_init=default_init(), dtype=jnp.dtype(self.dtype))
    temb = timestep_embedding(t_B, self.hidden_dim)
    temb_BxH = dense(self.hidden_dim)(nn.silu(dense(self.hidden_dim)(temb)))
    label_BxH = label_embedding(self.num_classes, self.hidden_dim, y_B, x_BxD.shape[0])
    temb_BxH = temb_BxH + label_BxH.astype(temb_BxH.dtype)
    h_BxH = x_BxD
    for _ in range(self.num_layers):
      h_BxH = nn.silu(dense(self.hidden_dim)(h_BxH) + dense(self.hidden_dim)(temb_BxH))
      h_BxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxH)
    # The loss, samplers and likelihoods read the prediction in float32.
    return dense(x_BxD.shape[-1] * self.outputs_per_channel)(h_BxH).astype(jnp.float32)
