"""Tests of the ctxcost peers package: python3 -m unittest discover -s peers/tests -t peers"""
