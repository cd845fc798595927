"""The training machinery pretraining, fine-tuning and the coming user model share: one loop
(`loop.Trainer`), its batches, checkpoints and finished phases, and the device it runs on."""
