"""PyTorch eager inference (fp32, or float16 autocast on CUDA), from a checkpoint folder."""

from __future__ import annotations

from typing import Any

from simplematch.bench.executors.base import Session, measure_inference
from simplematch.bench.machine import peak_rss_mib
from simplematch.bench.options import MIB


class TorchExecutor:
    def __init__(self, amp: bool = False) -> None:
        # amp: float16 autocast on CUDA (what `--amp` training uses), weights stay float32.
        self.amp = amp
        self.name = "torch-amp" if amp else "torch"

    def available(self, device: str) -> str | None:
        if self.amp and device != "cuda":
            return "autocast is measured on CUDA only (pass --device cuda)"
        return None

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return measure_inference(self._session(spec), spec)

    def _session(self, spec: dict[str, Any]) -> Session:
        import torch

        from simplematch.checkpoint import load_checkpoint
        from simplematch.matching import match_keypoints

        device, amp = spec["device"], self.amp
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        model, cfg = load_checkpoint(spec["path"], device=device)
        # The exported graph has LoRA folded in; fold it here too so both runtimes compute the same network.
        model.merge_lora()
        model.eval()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def encode(x: Any) -> Any:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=amp):
                return model.encode(torch.from_numpy(x).to(device)).float()

        def match(src: Any, trg: Any, kps: Any) -> Any:
            with torch.inference_mode():
                kps_t = torch.from_numpy(kps).to(device)
                return match_keypoints(src, trg, kps_t, cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord)

        cuda = device == "cuda"
        kind = "autocast fp16" if amp else "fp32"
        return Session(
            encode=encode,
            match=match,
            img_size=cfg.img_size,
            provider=f"torch {torch.__version__} eager {kind} ({torch.get_num_threads()} threads)",
            peak_mem_mib=(lambda: torch.cuda.max_memory_allocated() / MIB) if cuda else peak_rss_mib,
            sync=torch.cuda.synchronize if cuda else (lambda: None),
        )
