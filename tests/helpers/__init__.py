"""What the tests share: fabricated data trees, small networks, test problems, a local SLURM
cluster and the docs test's block reader."""
