"""What every benchmark in ``scripts/`` shares: where its data is, how it makes bundles, how it
scores and times them, and the one layout of the result files it writes.

The scripts run as ``python scripts/NAME.py``, which puts ``scripts/`` first on ``sys.path``, so
``import benchlib`` finds this package and no script imports another. One module a job:

* :mod:`benchlib.data`: the data rule (``--data``, ``FDQ_SHARED``, the weights and peer models);
* :mod:`benchlib.recipes`: the one table of bundle recipes and :func:`benchlib.recipes.build`;
* :mod:`benchlib.scoring`: AP in points, as every benchmark reports it;
* :mod:`benchlib.timing`: medians of timed calls, alone or paired;
* :mod:`benchlib.detectors`: detectors timed in the runner's pipeline, several measured on the same images;
* :mod:`benchlib.results`: the result layout ``fdq.bench/1``, written and read back;
* :mod:`benchlib.docs`: a generated block inside a docs page;
* :mod:`benchlib.peers`: YuNet, the detector fdq is compared with.
"""
