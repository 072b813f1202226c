"""What the runs are reported as: the report (`report`), the tables of README.md and
docs/ (`readme_tables`), the committed reference results (`reference`) and the
paper's claims (`claims`), and what each of them leaves out and why (`left_out`).
"""
