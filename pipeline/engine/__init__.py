"""The science engine: what the equations are, how a step is taken, when to stop.

``activations`` (Hermite coefficients), ``frames`` (index-vector Grams), ``initial`` (exact
initial overlaps for any d), ``seeding`` (random streams), ``params`` (the parameter table and
point resolution), ``dynamics`` and ``mse`` (vector fields and GD maps), ``integrate``
(compiled batched integrators and stopping) and ``simulate`` (the one entry point that joins
them). Nothing here imports Dask, zarr, the spec parser or the orchestration layer; the only
outside module it uses is :mod:`pipeline.errors`, the shared error vocabulary.
"""
