"""Training: the Trainer set-up and loop (trainer.py), its checkpoint contract (checkpoints.py), DDP
(distributed.py), resolving and loading the pretrained model (modeling.py), and the calibration fitted when
a model is trained (calibration.py)."""
