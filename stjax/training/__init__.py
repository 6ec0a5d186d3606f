"""Training: the pure step, the train program (`program`), the loop (`trainer`) and its
assembly from a config (`build`), objectives, optimizer, checkpoints, the cached reference,
multi-process agreement, metrics and plots."""
