r"""5-fold cross-validation of the digits classifier (experiments/finetune_image.py, from
scratch) at 2 learning rates: 2 x 5 = 10 runs, one row per learning rate in the table.

    jaxbig sweep --config experiments/finetune_image.py:mode=full,steps=100 \
        --sweep experiments/sweeps/finetune_kfold.py --workdir runs/digits_cv \
        --config.evals.val.batch_size=96

`sweep.kfold(5)` divides the 1,438 training digits into 5 folds stratified by class
(`data.folds`: 288, 288, 288, 287, 287 examples, each class's count within one across
folds; the 359 test digits stay out of it). Run `lr=...,fold=<i>of5` trains on the other 4
folds and evaluates `evals.val` on fold i ('fold' split): each of its 288 or 287 examples
once (`evals.val.num_examples=0`; the figures below were measured when the evaluator read
3 batches of 96, so the 287-example folds scored one example twice). results_cv.csv and
the first table of results.md give each learning rate's mean ± sample std (ddof=1) over its
5 folds; results.csv keeps the per-fold runs.

Measured (2-core CPU shared with other jobs: 12 min 51 s for the 10 runs, 5-10 steps/s;
ResNet-18 width 16 from scratch, 100 steps of batch 128; mean ± sample std over 5 folds):

    config      folds   val/accuracy      val/macro_f1      train/loss
    lr=0.001     5/5    0.942 ± 0.011     0.941 ± 0.011     0.49 ± 0.048
    lr=0.01      5/5    0.980 ± 0.0096    0.980 ± 0.0099    0.0014 ± 0.00044

Per fold, val/accuracy 0.931-0.955 at lr=0.001 and 0.965-0.990 at lr=0.01: the lr=0.01
folds all beat the lr=0.001 ones, the gap of the means (0.038) is 3.5-4 fold stds.
"""
from jaxbig import sweep


def get_sweep():
    return sweep.product(sweep.axis('optimizer.lr', [1e-3, 1e-2]), sweep.kfold(5))
