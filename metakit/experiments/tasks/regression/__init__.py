"""Regression task families: functions R → R."""
