-- os_fork.lua — the raw fork: after mp.fork() both the parent and the child
-- run the rest of the script, so '111' is printed twice.
-- From the seed notes-5 ("os.fork()"): `os.fork(); print('111')`.
-- luamp flushes stdout before it forks, so nothing is printed twice by
-- accident; mp.fork() returns 0 in the child and the child's pid in the
-- parent, as os.fork() does.
local mp = require("multiprocessing")

mp.fork()
print('111')
