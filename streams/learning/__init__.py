"""Online learning beside scoring: the labels join, the River trainer (one learning owner) and snapshot scoring."""
