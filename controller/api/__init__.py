"""The REST API: the app factory, one router per area and the response models."""
