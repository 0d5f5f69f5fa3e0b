"""The lecture's science on the project's own models: hidden units, gates, gradient flow, cells."""
