"""Report writers: a finished run as an HTML page (`html`) and as plots (`plots`); used by `twentyq report`
and `compare --plot`."""
