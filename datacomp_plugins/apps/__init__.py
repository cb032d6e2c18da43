"""Applications built on the pipeline: toy pool, report, compare, embed, DataComp patch, inspect, mini DataComp."""
