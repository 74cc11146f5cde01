"""Teacher models (pure nn.Modules) and network-free target builders."""
