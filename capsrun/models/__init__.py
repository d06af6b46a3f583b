"""Networks and their parts. The contract every model fulfils is in `base`; `registry` builds a
model by name. Nothing here knows about training, commands or the CLI.

Shape alphabet of this package, declared once:
  B  batch                      H, W, C  image height, width, channels
  I  primary (input) capsules   J        output capsules = classes (K in the contract's [B, K])
  D  capsule dimensions         D_in / D_out  input and output capsule dimensions
  T  targets (digits) per image (MultiMNIST: 2)
"""
