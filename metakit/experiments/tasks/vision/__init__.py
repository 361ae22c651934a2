"""Few-shot image classification: image sets, readers, episodes, the conv net."""
