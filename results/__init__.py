"""The repository's accuracy table, made from finished run folders: `python -m results build`.

    python -m results build RUN_DIR [RUN_DIR ...] [--out results] [--no-all-models]
    python -m results build                                  # regenerate from OUT alone
    python -m results build --forget RUN                     # drop a lost unfinished run's row
    python -m results throughput --models NAME [NAME ...] [--out results/throughput.csv]
    python -m results zoo [--models PATTERN ...] [--seeds 0 1] [--runs-dir runs/zoo]   # train, then build

OUT (default results/) holds what the table is made from and what is made from it:
  runs/NAME/       config.json, history.csv, metrics.json of each finished run (copied, small)
  partial.csv      runs named in a build before they had finished, and how far they had got
  throughput.csv   measured training throughput per model and machine (the estimates' divisor)
  table.csv        one row per model and recipe (runs.py names, table.py groups and computes)
  README.md        the table as Markdown, with what each column means
  accuracy_vs_time.png, curves.png
"""
