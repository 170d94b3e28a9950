@echo off
rem IB Data Agent starter for Windows: double-click it, or run it with arguments (start_windows.bat --check).
rem It only launches start_windows.ps1, which holds all the start logic: cmd has no hash function, no safe
rem way to read a command's output and fragile quoting, and one copy of the logic is one place to fix it.
rem On an error the window stays open so the message can be read.
setlocal
if not exist "%~dp0start_windows.ps1" (
    echo start_windows.ps1 is missing next to this file.
    echo Make sure you extracted the whole ZIP file - do not run the agent from inside the ZIP.
    pause
    exit /b 1
)
"%SystemRoot%\System32\WindowsPowerShell\v1.0\powershell.exe" -NoProfile -ExecutionPolicy Bypass -File "%~dp0start_windows.ps1" %*
set "AGENT_EXIT_CODE=%ERRORLEVEL%"
if not "%AGENT_EXIT_CODE%"=="0" pause
exit /b %AGENT_EXIT_CODE%
