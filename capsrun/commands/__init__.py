"""The commands of `capsrun`, one module each, all reading their arguments through the one
front-end in `frontend`. COMMANDS maps a command name to its module and function; the modules
are imported when their command runs (and load TensorFlow only after their config checks), so
that `capsrun --help` and config errors stay fast.
"""
COMMANDS = {
    "train": ("capsrun.commands.train", "train_command"),
    "launch": ("capsrun.commands.launch", "launch_command"),
    "eval": ("capsrun.commands.eval", "eval_command"),
    "visualize": ("capsrun.commands.visualize", "visualize_command"),
    "predict": ("capsrun.commands.predict", "predict_command"),
    "export": ("capsrun.commands.export", "export_command"),
    "bench": ("capsrun.commands.bench", "bench_command"),
    "report": ("capsrun.commands.report", "report_command"),
}
"""Command name -> (module, function taking the remaining arguments and returning an exit code)."""
