"""Plotting scripts: tidy CSVs under results/<profile>/ -> the paper's figures."""
