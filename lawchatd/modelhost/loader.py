"""Open a GGUF as a llama.cpp model plus one context with a slot per parallel sequence.

Runs in a worker thread. The weights are read into memory (``load_mode NONE, not mmap``): llama.cpp
repacks Q4_0 weights for the CPU kernels into a buffer of its own, and with mmap the file's
pages stay resident beside that copy (measured on the 7B shape: 2x the weights in RSS). The
KV cache is unified: every sequence may use the whole context, they share its cells.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from lawchatd.modelhost import llamalog
from lawchatd.modelhost.errors import ModelLoadError
from lawchatd.modelhost.memory import N_BATCH

LOAD_MODE = llama_cpp.LLAMA_LOAD_MODE_NONE  # read, not mmap: see the module doc
FLASH_ATTN = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO  # llama.cpp decides (on for CPU here)


@dataclass(eq=False)
class Loaded:
    model: llama_cpp.llama_model_p
    ctx: llama_cpp.llama_context_p
    vocab: llama_cpp.llama_vocab_p
    n_ctx: int
    n_vocab: int
    n_seq: int
    n_batch: int  # tokens one llama_decode takes: the batch's capacity and a step's budget
    batch: llama_cpp.llama_batch
    bos: int
    eos: int

    @property
    def memory(self) -> llama_cpp.llama_memory_t:
        return llama_cpp.llama_get_memory(self.ctx)


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def open_model(
    path: Path, *, n_ctx: int, n_seq: int, n_threads: int | None, n_gpu_layers: int | None
) -> Loaded:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    llamalog.install()
    errors = llamalog.collect_errors()
    try:
        mparams = llama_cpp.llama_model_default_params()
        mparams.load_mode = LOAD_MODE
        if n_gpu_layers is not None:
            mparams.n_gpu_layers = n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            reason = errors[0] if errors else "llama.cpp could not read it"
            reason = reason.rpartition("error loading model: ")[2]  # drop llama.cpp's prefix
            raise ModelLoadError(
                f"{path.name} could not be loaded: the file is damaged or is not a model this "
                f"llama.cpp can run. Delete it and download it again. Detail: {reason}"
            )
        threads = n_threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        n_batch = cparams.n_batch = cparams.n_ubatch = min(N_BATCH, n_ctx)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.flash_attn_type = FLASH_ATTN
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(f"could not make a context of {n_ctx} tokens for {path.name}")
    finally:
        llamalog.stop_collecting()
    vocab = llama_cpp.llama_model_get_vocab(model)
    return Loaded(
        model=model,
        ctx=ctx,
        vocab=vocab,
        n_ctx=llama_cpp.llama_n_ctx(ctx),
        n_vocab=llama_cpp.llama_vocab_n_tokens(vocab),
        n_seq=n_seq,
        n_batch=n_batch,
        batch=llama_cpp.llama_batch_init(n_batch, 0, 1),
        bos=llama_cpp.llama_vocab_bos(vocab),
        eos=llama_cpp.llama_vocab_eos(vocab),
    )


def free_model(loaded: Loaded) -> None:
    llama_cpp.llama_batch_free(loaded.batch)
    llama_cpp.llama_free(loaded.ctx)
    llama_cpp.llama_model_free(loaded.model)
    gc.collect()
    malloc_trim()


def malloc_trim() -> None:
    """Give freed heap back to the OS: llama.cpp's buffers are malloc'ed from the arena of
    whichever worker thread made them; without a trim each swap leaves RSS up."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)
