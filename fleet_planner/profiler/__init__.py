"""Engine profiling: measure a live OpenAI-compatible server, or ask NVIDIA AIConfigurator."""
