"""``python -m tunescope.train CONFIG.yaml`` (and ``torchrun ... -m tunescope.train``)."""

from tunescope.train.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())
