"""The ImageNet classes that the FID Inception network's logits score, from its label map.

The TensorFlow graph of 2015-12-05 scores 1008 outputs in an order of its own: output j is the
WordNet synset of the entry with `target_class: j` in the label map
`imagenet_2012_challenge_label_map_proto.pbtxt`, which ships beside the graph in
inception-2015-12-05.tgz; 1000 outputs name a synset, the rest none. ImageNet runs name their
classes by these synsets (tfds `imagenet2012` and `imagenet_resized`, and the ILSVRC training
folders, one per synset), so each of a run's labels maps to the output that scores it.
"""

import os
import re

_ENTRY = re.compile(r'target_class:\s*(\d+)\s*target_class_string:\s*"([^"]+)"')


def read_label_map(path: str | os.PathLike, num_logits: int) -> tuple[str, ...]:
  """The synset each of num_logits outputs scores ('' for none), read from the label map file.

  Raises:
    ValueError: the file is missing, has no entries, or names an output twice or out of range.
  """
  if not os.path.isfile(path):
    raise ValueError(
      f"no Inception label map at {path!r} (imagenet_2012_challenge_label_map_proto.pbtxt)"
    )
  with open(path) as f:
    entries = _ENTRY.findall(f.read())
  if not entries:
    raise ValueError(f"{path} holds no `target_class` / `target_class_string` entries")
  names = [""] * num_logits
  for index, synset in entries:
    j = int(index)
    if not 0 <= j < num_logits or names[j]:
      raise ValueError(f"{path}: output {j} is out of range 0..{num_logits - 1} or named twice")
    names[j] = synset
  return tuple(names)
