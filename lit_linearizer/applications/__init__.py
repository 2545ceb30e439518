"""The three applications, one package each: what to train, the model to use without Lightning, its grids, its commands.

Every package has the same files:

| file | what | imports |
|---|---|---|
| ``module.py`` | the LightningModule: training math (``model_step``), metric updates | ``modules``, the files below |
| ``model.py`` | a plain ``nn.Module`` on the trained g and A (sample, invert, project, stylize) | the core |
| ``grids.py`` | pure functions: model and tensors in, image grids out | ``model.py`` |
| ``diagnostics.py`` | reports and reference values (probes, baselines, algebra errors) | ``model.py`` |
| ``cli.py`` | adapter of `linearizer sample` (and `style`): options, tensors in, grids out | ``model``, ``grids`` |

The packages never import ``tasks`` or ``datamodules``: the commands (``lit_linearizer/tasks``) read
checkpoints, files and data, and hand tensors (or a reader) to ``cli.py``. Each package's ``__init__``
exports its LightningModule and its model; ``conf/model/<name>.yaml`` points at the LightningModule.
"""
