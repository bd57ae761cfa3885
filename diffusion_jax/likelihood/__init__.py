"""Likelihoods of a trained model: the DDPM variational bound (`vlb`) and the probability-flow ODE
log-likelihood (`ode`), in bits per dimension."""
