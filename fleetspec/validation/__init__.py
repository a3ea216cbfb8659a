"""Validation across stages: what a fleet file means once the catalog, the planner and the routing
table have looked at it. Above planner and routing (it needs both), below compile and the CLI.
"""
