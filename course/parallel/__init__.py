"""Composing the parallelisms (notebook 08, section 9): one idea per short file.

- :mod:`course.parallel.measure`: instruments independent of the formulas they are compared with:
  live tensor bytes (``torch.distributed._tools.mem_tracker.MemTracker``) and bytes written to
  sockets (``wchar`` in ``/proc/self/io``);
- :mod:`course.parallel.mesh`: tensor x data parallel training of a tiny MLP on a 2 x 2 device mesh;
- :mod:`course.parallel.overlap`: bucketed DDP whose all-reduces run while backward goes on;
- :mod:`course.parallel.precision`: mixed-precision model states (bf16 weights and gradients, fp32
  master weights and Adam moments) in the ZeRO accounting, measured on the tensors;
- :mod:`course.parallel.recompute`: activation recomputation (``torch.utils.checkpoint``), peak
  activation memory against time.
"""
