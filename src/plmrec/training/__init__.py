"""The training machinery pretraining, fine-tuning and the user model share: one loop
(`loop.Trainer`), its batches, checkpoints and finished phases, and the device it runs on."""
