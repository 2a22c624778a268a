"""The lab: tools that build and measure slimeseg, kept outside the installed package.

Users install `slimeseg` (the library, CLI and app). What only the project's own tests and
benchmarks need lives here, importable from a checkout (the repository root on `sys.path`):

- `train_model`: pretrain the small lab SD on the synthetic world (`python -m lab.train_model`)
- `probe`: how peaked and part-grouping a UNet's self-attention is
- `quality`: SLiMe's quality on the lab world (the library behind `benchmarks/quality.py`)
- `ceiling`: what a linear classifier on the lab SD's UNet features reaches with 500 labels
- `baseline`: a reference-style (explicit attention) SLiMe for side-by-side timings
- `fullsize`: SD 2.1 / 1.5-shaped models with random weights for speed and precision checks

The world generator itself stays in the package (`slimeseg.synthetic`): users can render its images
to try the tool, and every tool here draws on it.
"""
