"""Lesion insertion (Gupta et al., seed 003): a patch GAN over the stored lesion boxes, and
its patches blended into synthetic normal images (`node train-patches`,
`node generate --insert-lesions CLASS`). Modules, in data-flow order: ``patches`` (crops,
training, loading with fit checks), ``placement`` (where), ``blend`` (how), ``insert``
(the pipeline)."""
