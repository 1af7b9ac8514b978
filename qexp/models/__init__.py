"""Plain ``nn.Module`` models; each factory takes ``in_shape`` and ``num_classes`` from the data."""
