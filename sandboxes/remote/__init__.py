"""Remote access to sandbox guests: the SSH certificate authority (.ca), the SSH client layer
(.ssh) and their typed errors (.errors).

No Django here; the service layer passes configuration in and gets typed errors out. Import
each name from the module it lives in.
"""
