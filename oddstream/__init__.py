"""The composition root: the ``oddstream`` command, the settings of each process role
(one table, :mod:`oddstream.options`) and the wiring of each role (:mod:`oddstream.dev`,
:mod:`oddstream.gateway`, :mod:`oddstream.books`, :mod:`oddstream.feed`).

Everything else is a library this package puts together; nothing imports it.
"""
