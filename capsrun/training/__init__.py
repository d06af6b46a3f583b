"""Training: the Trainer and `train(cfg, run_dir)` (`trainer`), the sums shared by the train and
eval steps (`steps`), the compiled evaluation loop (`evaluator`), checkpoints (`checkpoints`),
the run-folder layout (`run_folder`), restoring a run (`restore`), TensorBoard output
(`summaries`), devices and strategies (`distribute`), stop signals (`signals`) and sweep jobs
(`sweeps`). Nothing here knows about commands or the CLI; library code raises, never exits.
"""
