"""What two or more models use: backbones and the weights-file reader, the memory bank, patches.
Imports no model."""
