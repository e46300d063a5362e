"""``smatch eval``: one package for the dispatcher and its two predictors (torch-free at import).

* :mod:`~simplematch.evaluation.dispatch` - the command as a library call: checks, which predictor, the files;
* :mod:`~simplematch.evaluation.torch_predictor` - a checkpoint folder with PyTorch (``predict_pairs_torch``);
* :mod:`~simplematch.evaluation.runtime_predictor` - an .onnx / .engine file with the torch-free runtime
  (``predict_pairs_runtime``).

Only the dispatcher's names are re-exported here, so importing the package never imports torch.
"""

from simplematch.evaluation.dispatch import (
    EvalOutputs,
    EvalRequest,
    evaluate_any,
    print_result,
    run_evaluation,
    sample_pairs,
)

__all__ = ["EvalOutputs", "EvalRequest", "evaluate_any", "print_result", "run_evaluation", "sample_pairs"]
