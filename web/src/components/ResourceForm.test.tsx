import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { ThemeProvider } from '@mui/material';
import { theme } from '../theme';
import { ApiError } from '../api/problem';
import type { FieldDef } from '../lib/form';
import { name, port } from '../lib/validate';
import { ResourceForm } from './ResourceForm';

const fields: FieldDef[] = [
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'ports', label: 'Ports', kind: 'list', itemCheck: port, numeric: true },
];

function setup(onSubmit: (b: Record<string, unknown>) => Promise<unknown>) {
  const onClose = vi.fn();
  render(
    <ThemeProvider theme={theme}>
      <QueryClientProvider client={new QueryClient()}>
        <ResourceForm open title="New mapping" fields={fields} onSubmit={onSubmit} onClose={onClose} />
      </QueryClientProvider>
    </ThemeProvider>,
  );
  return { onClose };
}

describe('ResourceForm', () => {
  it('checks on the client first and does not call the server with a bad value', async () => {
    const submit = vi.fn(async () => ({}));
    setup(submit);
    await userEvent.type(document.querySelector('[data-field="name"]')!, 'web-db');
    await userEvent.type(document.querySelector('[data-field="ports"]')!, '80 0');
    await userEvent.click(screen.getByRole('button', { name: 'Create' }));
    expect(await screen.findByText('[1] port 0 is outside 1-65535')).toBeInTheDocument();
    expect(submit).not.toHaveBeenCalled();
  });

  it('shows the server problem+json next to the field it names, and form-level ones above', async () => {
    let call = 0;
    const submit = vi.fn(async () => {
      call += 1;
      if (call === 1)
        throw new ApiError(422, { type: 'https://marchproxy.dev/problems/invalid-field', detail: 'ports[0]: port 8080 is reserved here', field: 'ports[0]' });
      throw new ApiError(409, { type: 'https://marchproxy.dev/problems/conflict', detail: 'a mapping named "web-db" exists' });
    });
    const { onClose } = setup(submit);
    await userEvent.type(document.querySelector('[data-field="name"]')!, 'web-db');
    await userEvent.type(document.querySelector('[data-field="ports"]')!, '8080');
    await userEvent.click(screen.getByRole('button', { name: 'Create' }));
    const msg = await screen.findByText('ports[0]: port 8080 is reserved here');
    expect(msg.id).toBe(document.querySelector('[data-field="ports"]')!.getAttribute('aria-describedby'));
    expect(submit).toHaveBeenCalledWith({ name: 'web-db', ports: [8080] });
    await userEvent.click(screen.getByRole('button', { name: 'Create' }));
    expect(await screen.findByTestId('form-error')).toHaveTextContent('a mapping named "web-db" exists');
    expect(onClose).not.toHaveBeenCalled();
  });
});
