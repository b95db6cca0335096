"""Schedules and samplers: plain functions that know nothing about the networks they drive."""
