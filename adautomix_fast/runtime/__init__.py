"""The process a run lives in: devices, CPU threads, torchrun, stop signals, fatal errors."""
