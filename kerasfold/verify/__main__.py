from .check import command

command()
