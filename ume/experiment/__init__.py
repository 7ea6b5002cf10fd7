"""The paper's comparison (`ume experiment`): dense vs dense-continued vs UME vs ablations vs
scratch MoE on one corpus, with results tables, paired-bootstrap comparisons and plots; the
README demo (`ume demo`) and the bundled model's scoring (`bundle`) build on it."""
