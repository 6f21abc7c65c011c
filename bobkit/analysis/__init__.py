"""Analysis of a results table, one module per concern.

``load`` (the user's results and the public reference tables, as one schema), ``settings`` (what a setting is, which
metrics score each task, matching settings across tables), ``uncertainty`` (within-cell standard errors, bootstrap
intervals), ``scores`` (z-scores, task and overall scores, leaderboards), ``correlation``, ``regression``,
``id_ood`` (ID-vs-OOD trends, effective robustness, robustness and calibration pairs), ``comparisons`` (paired,
group, protocol and placement comparisons), ``prose`` (the sentences notebooks show, table values escaped),
``findings`` (the paper's stated values), ``plots``, ``public`` (timm's and the BoB tables) and ``notebook`` (the
``Analysis`` helper every analysis notebook uses).
"""
