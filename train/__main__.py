"""``python -m tunescope.train CONFIG.yaml`` (and ``torchrun ... -m tunescope.train``)."""

from tunescope.train.trainer import main

raise SystemExit(main())
