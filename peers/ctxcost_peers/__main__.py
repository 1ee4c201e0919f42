"""``python3 -m ctxcost_peers ADAPTER`` serves one adapter over stdin/stdout;
``python3 -m ctxcost_peers --list`` prints the adapter ids with their method."""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from .protocol import guard_stdout

    if argv and argv[0] == "--list":
        from .adapters import ADAPTERS

        for aid, (_, _, method) in ADAPTERS.items():
            print("%s %s" % (aid, method))
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python3 -m ctxcost_peers ADAPTER | --list\n")
        return 2
    # From here on stdout belongs to the protocol: move prints (ours and libraries') to stderr
    # before any adapter module is imported.
    guard_stdout()
    from .adapters import load
    from .protocol import serve

    try:
        adapter = load(argv[0])
    except KeyError as e:
        sys.stderr.write("%s\n" % e.args[0])
        return 2
    return serve(adapter)


if __name__ == "__main__":
    sys.exit(main())
