"""VA-π: config, noise kernel, rewards, objective, trainer, baselines."""
