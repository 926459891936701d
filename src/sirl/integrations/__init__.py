"""sirl's credit where users train: ``sirl.integrations.trl`` (a TRL ``GRPOTrainer`` subclass) and
``sirl.integrations.verl`` (a verl advantage estimator). Both are thin: the credit itself is
``sirl.credit``, on token ids, and the step boundaries ``sirl.credit.steps``. Import the submodule you
need; each needs its own optional extra (``pip install 'sirl[trl]'`` or ``'sirl[verl]'``)."""
