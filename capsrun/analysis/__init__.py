"""Analysis of trained runs: eval.json numbers, predictions CSVs and ensembles (`metrics`),
figures (`figures`), what the capsules hold (`capsules`), sweep tables (`report`) and speed
measurements (`bench`). Nothing here knows about commands or the CLI.
"""
