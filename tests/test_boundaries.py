import subprocess
import sys


def test_protocol_core_imports_no_io_or_ui_library():
    """Importing ocpptool.protocol pulls in no polars, pyshark, websockets or textual."""
    code = (
        "import sys, ocpptool.protocol, ocpptool.protocol.versions, ocpptool.protocol.actions;"
        "bad = [m for m in ('polars', 'pyshark', 'websockets', 'textual', 'typer', 'rich') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
