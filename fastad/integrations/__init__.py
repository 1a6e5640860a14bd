"""Optional bridges to libraries users already run. Each submodule imports its library only when
it is used: `fastad.integrations.anomalib` needs `pip install 'fastad[anomalib]'`."""
