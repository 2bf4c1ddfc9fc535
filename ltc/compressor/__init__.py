"""PyTorch side: models, masks and the ticket format."""
